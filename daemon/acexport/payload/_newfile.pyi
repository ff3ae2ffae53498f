from os import PathLike

# The C module of tempfiles.write_new (_newfile.c says what it does).
def write_new(path: str | PathLike[str], data: bytes, sync: bool, /) -> None: ...
