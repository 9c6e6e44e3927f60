"""PyTorch adapter: nn.Module models, standard SGD and Opacus DP-SGD steps."""
from frameworks.torch.adapter import TorchAdapter

ADAPTER = TorchAdapter()
