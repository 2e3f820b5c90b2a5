"""rnnlab: vanilla RNN, LSTM and GRU written from their equations, with hand-derived BPTT.

    from rnnlab import Classifier, from_torch, unroll
    layer = from_torch(torch.nn.LSTM(8, 16))      # same weights, rnnlab's code
    out, (h_n, c_n) = layer(x)

Importing the package loads torch and the maths only; plots, data loading and training are imported
by the commands that use them.
"""

from rnnlab.cells import GRUCell, LSTMCell, RNNCell, make_cell
from rnnlab.config import Config
from rnnlab.errors import UserError
from rnnlab.model import Classifier
from rnnlab.recurrent import Recurrent, from_torch, retain_buffers, unroll

__all__ = ["Classifier", "Config", "GRUCell", "LSTMCell", "RNNCell", "Recurrent", "UserError", "from_torch",
           "make_cell", "retain_buffers", "unroll"]
__version__ = "0.1.0"
