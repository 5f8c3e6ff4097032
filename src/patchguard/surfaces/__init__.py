"""One module per protected structure or hookable interface of the kernel."""
