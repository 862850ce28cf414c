"""What the runs show: Section 4's query/negative pairs (:mod:`.pairs`) and
every figure and table (:mod:`.figures`)."""
