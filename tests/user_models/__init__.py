"""User models defined outside the tfpipes package, as a user would write them."""
