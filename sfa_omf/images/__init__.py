"""The image repository (disk images operators add and experimenters name in requests) and the provisioning mode
that decides, node by node, whether a lease's image must be installed again (docs/images-and-instances.md)."""
