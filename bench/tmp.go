package main

import (
	_ "github.com/centrifugal/centrifuge"
	_ "github.com/gorilla/websocket"
	_ "github.com/olahol/melody"
)

func main() {}
