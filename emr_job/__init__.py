"""The Spark job an EMR step runs: features, feature store, PCA."""
