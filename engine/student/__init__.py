"""The student: training and evaluation, each recorded as a run of its own."""
