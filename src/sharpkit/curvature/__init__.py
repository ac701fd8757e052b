"""The numerical engine: Hessian operators, eigensolvers and stochastic estimators.

It takes a model, a loss and data (or any symmetric matvec) and knows nothing of
plugins, the CLI or the results store.
"""
