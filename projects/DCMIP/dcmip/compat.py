def apply_fastreid_compat():
    pass
