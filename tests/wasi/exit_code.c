/* The module's exit code is the run's. */
int main(void) { return 42; }
