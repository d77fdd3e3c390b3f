"""HIL test campaigns: scenario matrices, acceptance criteria, execution and reports."""
