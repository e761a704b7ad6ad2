"""Experiments: the research's grid (strategy x budget x seed-set size x replicate) as one command.

A cell is a generation run under an exact budget, a training run on its data and an evaluation
run of the student, each recorded in the store and linked from the experiment's own run (kind
"experiment"), whose events are the grid, each cell's start and finish, and the result. Tables,
confidence intervals, crossovers and plots are folds over those events.

    config.py          the grid file: parsing and the checks that need nothing else
    prepare.py         every other check before anything runs (plugins, budgets, held-out overlap)
    seeds.py           the seed pool and its nested subsets per replicate
    cells.py           the cells and the run/train configs each one runs with
    journal.py         the experiment run's event writer (create, or reopen to resume)
    claim.py           the workdir's marker: one experiment (one run in one store) per folder
    stages.py          one cell's generation (in the driver) and its train+eval job (in a worker)
    executor_local.py  train/eval jobs in a pool of local processes
    executor_ray.py    train/eval jobs as Ray tasks with declared resources
    driver.py          the loop: generation cells one at a time, train/eval cells in parallel
    view.py            the live progress view of the grid
    results.py         the experiment's state and table, folded from its events (the --json object)
    report.py          that table for a person
    stats.py           paired bootstrap confidence intervals and the crossover budget ratio
    plot.py            the research's figure
    advice.py          the measured crossover for `recommend --from`
"""
