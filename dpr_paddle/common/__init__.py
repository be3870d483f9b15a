"""The bottom layer, used by every other: the error base class (`errors`), atomic writes, file
fingerprints and paths (`files`), and process set-up for the commands (`runtime`)."""
