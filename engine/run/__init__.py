"""One generation run: its config, the parts assembled from it, the runner that walks the plan, the
dispatcher that sends each query, and what sits between them."""
