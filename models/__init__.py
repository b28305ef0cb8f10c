"""The models: data, the course's net, its trainer and serving. Pure PyTorch, NumPy and
scikit-learn: nothing here knows of Ray or MLflow.

- ``config``: the knobs a model accepts (MLPConfig, HParams) and the rules on their values.
- ``data``: built-in sets and user files, split and standardised.
- ``net``: the batch-norm + softmax MLP.
- ``train``: the training loop, checkpoints (weights, optimizer, BN statistics, RNG).
- ``reference``: a NumPy batch norm and softmax, to check torch's against the course.
- ``serving``: a trained model as files (weights + JSON), loaded and used to predict.
- ``fingerprint``: a data set's per-feature deciles and class shares; drift (PSI).
- ``objective``: a metric and which way is better, for every comparison of scores.
- ``files``: writing a file whole or not at all.
"""
