from lowbit.hessian.analysis import main

main()
