"""Running cells: the local executor (`runner`), the Ray executor (`ray_executor`), progress, and the environment recorded on rows."""
