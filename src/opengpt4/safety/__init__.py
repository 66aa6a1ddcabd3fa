"""Safety: the policy as data (policy.py), prompts and rubric-labelled responses generated from the
synthetic world (data.py), and the graders that give a response its rubric class and signed reward
(graders.py: the rule-based oracle, the zero-shot model-graded rubric). The safety eval lives with
the other benchmarks (evals/benchmarks/safety.py). Import the modules themselves: data.py is light,
graders.py pulls in the evals framework."""
