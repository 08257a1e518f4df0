"""Reading and editing a network's layers: the capture primitive (`reader`), numeric precision and device
choices (`precision`), and the selectivity pass that streams a dataset through the capture (`selectivity_pass`)."""
