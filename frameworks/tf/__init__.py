"""TensorFlow adapter: Keras models, standard and TF-Privacy steps."""
from frameworks.tf.adapter import TfAdapter

ADAPTER = TfAdapter()
