"""Reference patterns of well-trained networks and the comparison against them."""
