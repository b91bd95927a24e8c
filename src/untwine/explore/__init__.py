"""Exploration (SPEC 5): predictive distributions of pCTR (bootstrap ensembles, MC dropout), serving
policies that rank by eCPM = bid x pCTR (greedy, epsilon-greedy, UCB, Thompson sampling, LinUCB), and the
closed loop that serves, observes and retrains on the simulator's ad market."""
