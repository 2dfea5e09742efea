"""Recording what a layer sees during training: the statistics of its input on a fixed probe
batch, epoch after epoch (Ioffe & Szegedy 2015, figure 1)."""

import numpy as np


class ActivationRecorder:
    """Records, for chosen layers of a :class:`~normkit.Sequential`, the statistics of their
    input on a fixed probe batch, in eval mode, each time it is called.

    Use it as a :func:`normkit.fit` callback (it is called after every epoch); call
    ``recorder.record(model, 0)`` before training for the starting point.

    Parameters
    ----------
    probe : ndarray
        The fixed batch pushed through the model.
    layers : dict of {name: index}
        The Sequential indices whose *input* is recorded, under a name of your choosing.
    units : sequence of int
        Units (columns) whose 15th/50th/85th percentiles are kept, as in Ioffe & Szegedy.
    percentiles : sequence of float

    Attributes
    ----------
    records : list of dict
        One per (call, layer): ``epoch``, ``layer``, ``mean`` and ``std`` over every unit and
        sample, ``unit_percentiles`` (len(units), len(percentiles)).
    """

    def __init__(self, probe, layers, units=(0, 1, 2), percentiles=(15, 50, 85)):
        self.probe = probe
        self.layers = dict(layers)
        self.units = tuple(units)
        self.percentiles = tuple(percentiles)
        self.records = []

    def inputs(self, model):
        """{name: input array of that layer} for the probe batch (eval mode, mode restored)."""
        wanted = {index: name for name, index in self.layers.items()}
        missing = sorted(i for i in wanted if not 0 <= i < len(model))
        if missing:  # else they would record nothing, silently
            raise ValueError(f"ActivationRecorder: the model has {len(model)} layers, no layer "
                             f"{missing[0]} (for {wanted[missing[0]]!r})")
        seen = {}
        was_training = model.training
        model.eval()
        try:
            x = self.probe
            for i, layer in enumerate(model):
                if i in wanted:
                    seen[wanted[i]] = np.array(x, copy=True)
                x = layer(x)
        finally:
            model.train(was_training)
        return seen

    def record(self, model, epoch):
        """Append the statistics of each chosen layer's input on the probe, labelled ``epoch``."""
        for name, x in self.inputs(model).items():
            x2 = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
            if max(self.units, default=-1) >= x2.shape[1]:
                raise ValueError(f"ActivationRecorder: units {self.units} asked of layer {name!r}, "
                                 f"whose input has {x2.shape[1]} units")
            self.records.append({
                "epoch": epoch, "layer": name, "mean": float(x2.mean()), "std": float(x2.std()),
                "unit_percentiles": np.percentile(x2[:, list(self.units)], self.percentiles, axis=0).T,
            })

    def __call__(self, epoch, model, history):
        self.record(model, epoch)

    def series(self, layer, key):
        """One statistic of one layer over the recorded calls.

        Parameters
        ----------
        layer : str
            A name given in ``layers``.
        key : {"mean", "std", "unit_percentiles"}

        Returns
        -------
        epochs, values : ndarray
        """
        rows = [r for r in self.records if r["layer"] == layer]
        return np.array([r["epoch"] for r in rows]), np.array([r[key] for r in rows])
