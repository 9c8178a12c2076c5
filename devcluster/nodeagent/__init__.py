"""A scheduler-and-kubelet stand-in that runs Job pods as local processes."""
