"""The tfpipes pipelines (installed as ``tfpipes_pipelines``): the DAGs and how to run them."""
