"""Data pipelines: the official BP4D/DISFA on-disk layout read with tf.data, and a synthetic AU-face set."""
