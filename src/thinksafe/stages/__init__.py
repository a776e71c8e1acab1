"""Pipeline stages: generate, judge, dataset, train, evaluate, report."""
