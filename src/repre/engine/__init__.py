"""The run engine: the training loop (`trainer`) and what it delegates: checkpoints and resume (`checkpoints`,
`state`), the optimizer (`optim`), the non-finite guard (`guard`), what the processes agree on between steps
(`agreement`), compiled blocks (`compile`), monitors and evaluations around the steps (`callbacks`,
`diagnostics`), the time of the steps (`clock`), the train lines (`metrics`) and pre-emption (`signals`).
Schedules, the runtime and the collectives are `repre.core`'s."""
