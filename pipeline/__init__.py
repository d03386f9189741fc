"""The live JSON pipeline: HTTP in, an arq queue on Redis, a database, live out to browsers."""
