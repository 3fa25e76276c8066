from roadie.cli import app

app()
