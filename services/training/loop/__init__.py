"""The training process's shared loop and what feeds it: batch sources, collation, the loop
(``trainer.Trainer`` over a composed ``StepLoss``), checkpoints, ranks and metrics files."""
