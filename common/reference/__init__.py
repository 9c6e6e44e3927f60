"""What every framework must compute: model specs, shared weights, the float64 reference, fastclip plans."""
