"""Networks: backbone registry, SimCLR, hierarchical classifier, multi-task variants."""
