"""Training a model: one optimizer update, the loop that repeats it, and the components the loop calls.

    step.py          one update: forward, −log p of the next tokens, backward, clip, optimizer step
    loop.py          the loop: update after update, calling the components below in order
    trainer.py       train(): sets a run up, resumes it, hands each component what it needs
    progress.py      what a run has done (saved in every checkpoint as trainer.json)
    metrics.py       the log record at log steps, the progress bar, skipped non-finite updates
    evaluator.py     validation loss and samples, at the evaluator's interval
    checkpointer.py  when to save, resuming, and the removal after a rollback
    checkpoint.py    a checkpoint on disk: the one save path, the single-file layout, verifying, loading
    sharded.py       the sharded layout, written by every rank through torch.distributed.checkpoint
    spike_guard.py   a loss spike sends the run back to the checkpoint before it
    budget.py        how long a run trains (RunLength) and the steps that fit a time budget
    schedule.py      the learning rate: warmup–stable–decay, cosine
    batch.py         the global batch, the same at every world size
    precision.py     fp32, bf16 or fp16, raced where in doubt; autocast and loss scaling
    optimizer.py     AdamW over the model's parameter groups, or Muon for the blocks' matrices with AdamW for the rest
    stop.py          SIGINT and SIGTERM: save, then stop
    distributed.py   torchrun, the process group, DDP and FSDP2 wrapping
    machine.py       what this machine is: device, threads, bf16 support, measured matmul peak
    runlog.py        the run's log.jsonl (and TensorBoard)
"""
