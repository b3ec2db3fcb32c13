"""Recipe matrices: many optimize runs as tasks on a Ray cluster, and their report."""
