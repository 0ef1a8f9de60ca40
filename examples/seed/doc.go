// Command seed is the complete example from the original chart README,
// kept here word for word (gofmt only) so that CI proves it still compiles
// against this library; TestSeedExample checks that it behaves as that
// README says. Run it with `go run ./examples/seed` and connect to
// ws://localhost:8888/ws?id=888.
package main
