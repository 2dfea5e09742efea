"""Real data sets bundled with scikit-learn (no download): standardised, split, ready for fit.

Needs the ``data`` extra: ``pip install 'normkit[data]'``.
"""

import numpy as np


def _sklearn():
    try:
        import sklearn.datasets
        import sklearn.model_selection
    except ImportError:
        raise ImportError("normkit.datasets needs scikit-learn: pip install 'normkit[data]'") from None
    return sklearn


def _split_standardise(X, y, test_size, seed, dtype):
    sk = _sklearn()
    X_tr, X_te, y_tr, y_te = sk.model_selection.train_test_split(
        X, y, test_size=test_size, random_state=seed, stratify=y)
    mean, std = X_tr.mean(axis=0), X_tr.std(axis=0)
    std[std == 0] = 1.0  # constant features (digits has some) stay at zero
    return (((X_tr - mean) / std).astype(dtype), y_tr, ((X_te - mean) / std).astype(dtype), y_te)


def load_breast_cancer(test_size=0.2, seed=0, dtype=np.float32):
    """Wisconsin breast cancer: 569 samples, 30 features, binary.

    Parameters
    ----------
    test_size : float
        The share of the samples held out for validation (stratified by class).
    seed : int
        Seeds the split.
    dtype : float32 or float64
        Of the features and labels.

    Returns
    -------
    X_train, y_train, X_val, y_val : ndarray
        Features standardised with the training split's statistics; labels float (N, 1) in
        {0, 1}, for the BCE losses.
    """
    data = _sklearn().datasets.load_breast_cancer()
    X_tr, y_tr, X_te, y_te = _split_standardise(data.data, data.target, test_size, seed, dtype)
    return X_tr, y_tr.reshape(-1, 1).astype(dtype), X_te, y_te.reshape(-1, 1).astype(dtype)


def load_digits(test_size=0.2, seed=0, dtype=np.float32):
    """8x8 handwritten digits: 1797 samples, 64 features, 10 classes.

    Parameters
    ----------
    test_size : float
        The share of the samples held out for validation (stratified by class).
    seed : int
        Seeds the split.
    dtype : float32 or float64
        Of the features.

    Returns
    -------
    X_train, y_train, X_val, y_val : ndarray
        Features standardised with the training split's statistics; labels int64 (N,), for
        CrossEntropyLoss.
    """
    data = _sklearn().datasets.load_digits()
    X_tr, y_tr, X_te, y_te = _split_standardise(data.data, data.target, test_size, seed, dtype)
    return X_tr, y_tr.astype(np.int64), X_te, y_te.astype(np.int64)


DATASETS = {"breast_cancer": load_breast_cancer, "digits": load_digits}


def load(name, **kwargs):
    """Load a data set by name.

    Parameters
    ----------
    name : {"breast_cancer", "digits"}
    **kwargs
        Passed on to :func:`load_breast_cancer` or :func:`load_digits`.

    Returns
    -------
    X_train, y_train, X_val, y_val : ndarray
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(DATASETS)}")
    return DATASETS[name](**kwargs)
