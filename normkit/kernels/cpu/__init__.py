"""Numba CPU kernels. Each works on contiguous-or-strided arrays of a fixed rank; layouts are the
dispatcher's business (``normkit.functional``)."""
