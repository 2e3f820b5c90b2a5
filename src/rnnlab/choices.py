"""The names each setting can take: one list each, read by `Config.validate`, the command line and the
library alike, so a new cell or optimiser is added in one place. No torch here: `rnnlab --help` reads
these without loading it."""

CELLS = ("rnn", "lstm", "gru")  # recurrent cells; cells.CELLS maps each name to its class
PHIS = ("tanh", "relu")  # the vanilla RNN's nonlinearity phi
BACKWARDS = ("autograd", "manual")  # loss.backward through the loop, or the hand-written BPTT
ENGINES = ("auto", "python", "compiled")  # who runs the hand BPTT's time loop (rnnlab.engine)
OPTIMIZERS = ("sgd", "adagrad", "adam")  # written by hand in optim.py; make_optimizer takes these names
SCHEDULES = ("constant", "cosine", "step")  # learning rate over the steps; make_schedule takes these names
TASKS = ("classify", "lm")  # labelled sentences, or the next token of a text
LEVELS = ("char", "word")  # a language model's tokens
FORMATS = ("tsv", "csv", "uci", "rt")  # labelled data files (data.load_dataset)
