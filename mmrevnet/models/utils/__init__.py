"""Building blocks of the m-RevNet backbones."""
