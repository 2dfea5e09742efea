"""scipy.special, imported on first use: it takes ~0.2 s to import, more than the rest of normkit."""


def special():
    from scipy import special as module
    return module
