"""Images: FlexTok 1D tokens of flexible length, a 2D-grid FSQ baseline, class-conditional AR."""
