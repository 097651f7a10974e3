from layerport.cli import main

main()
