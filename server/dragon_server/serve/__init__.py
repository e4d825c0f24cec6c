"""The persistent inference server (`dragon serve`) and its client side, over ZeroMQ."""
