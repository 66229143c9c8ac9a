"""medadapt: which foundation model, adapted how, works best on my medical images, at what cost?"""

__version__ = "0.1.0"
