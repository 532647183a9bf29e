"""On-policy training (DAgger) with the closed-loop simulator's privileged expert as labeller."""
