"""Fashion-MNIST reference models, their training script and the FID feature classifier."""
