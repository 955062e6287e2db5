"""The stage loops (Prefect-free): read what is done, run the model on what is pending, write frames."""
