"""A small float64 torch Gaussian process for Hyperdyn (pure maths: no Optuna import).

:mod:`~optuna_ext._gp.kernels` holds the product kernel of paper 002 (Matern-5/2 or RBF on the
tuned parameters times the time kernel ``beta**alpha / (|t1 - t2| + beta)**alpha``),
:mod:`~optuna_ext._gp.gp` the regressor and its marginal-likelihood fit,
:mod:`~optuna_ext._gp.acqf` expected improvement and its maximization at a fixed epoch, and
:mod:`~optuna_ext._gp.box` the map of the search box to the unit cube. The Optuna adapter is
:class:`optuna_ext.samplers._hyperdyn.HyperdynSampler`.
"""
