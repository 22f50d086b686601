"""Data: the dataset of a run and its list files, the tf.data input pipeline, the transforms, the synthetic sets."""
