/** Wire and public types shared by the modules. */
export {};
