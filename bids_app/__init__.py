"""The ``ddasr`` BIDS App (installed as ``ddasr_nipype.bids_app``)."""
