// placeholder until the data library lands
